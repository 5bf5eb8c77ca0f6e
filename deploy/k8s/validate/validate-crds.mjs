// Validate prometheus-operator objects against the schemas of their CRDs
// (monitoring.coreos.com/v1, compiled by @kubernetes-models/prometheus-operator).
// Input: a JSON array of objects on stdin. Output: one line per object; exit 1 if any fails.
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const models = { ServiceMonitor, PrometheusRule };
let failed = 0;
for (const obj of JSON.parse(readFileSync(0, "utf8"))) {
  const name = `${obj.kind}/${obj.metadata?.name}`;
  const Model = obj.apiVersion === "monitoring.coreos.com/v1" ? models[obj.kind] : undefined;
  if (!Model) {
    console.log(`UNKNOWN ${name} (${obj.apiVersion})`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`OK ${name}`);
  } catch (err) {
    console.log(`INVALID ${name}: ${err.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
