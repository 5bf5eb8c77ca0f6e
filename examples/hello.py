"""The hello-world Runbox job: greets the `name` parameter and reports where it ran."""

import json
import os
import platform
import sys

params_file = os.environ.get("RUNBOX_PARAMS_FILE")
params = json.load(open(params_file)) if params_file and os.path.exists(params_file) else {}
name = params.get("name") or os.environ.get("RUNBOX_PARAM_NAME") or "world"

print(f"Hello, {name}!")
print(f"python {platform.python_version()} on {platform.system()}, uid {os.getuid()}")
print("this line goes to stderr", file=sys.stderr)
