"""The hello-world Runbox job: greets the `name` parameter and reports where it ran."""

import json
import os
import platform
import sys

params = {}
params_file = os.environ.get("RUNBOX_PARAMS_FILE")
if params_file and os.path.exists(params_file):
    with open(params_file) as f:
        params = json.load(f)
name = params.get("name") or os.environ.get("RUNBOX_PARAM_NAME") or "world"

print(f"Hello, {name}!")
print(f"python {platform.python_version()} on {platform.system()}, uid {os.getuid()}")
print("this line goes to stderr", file=sys.stderr)
