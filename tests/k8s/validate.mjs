// Validates custom resources against their CRDs' schemas, as generated from the CRDs by
// kubernetes-models (npm @kubernetes-models/keda, cert-manager, prometheus-operator).
//
//   node tests/k8s/validate.mjs < resources.json     # a JSON array of resources
//
// Prints one JSON object: {"checked": [kinds...], "errors": ["<kind>/<name>: <message>"...]}.
// A kind none of the packages knows is an error: nothing goes unchecked by accident.
import { readFileSync } from "node:fs";
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";
import * as certManager from "@kubernetes-models/cert-manager/cert-manager.io/v1";
import * as monitoring from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = {
  "keda.sh/v1alpha1": keda,
  "cert-manager.io/v1": certManager,
  "monitoring.coreos.com/v1": monitoring,
};

const resources = JSON.parse(readFileSync(0, "utf8"));
const checked = [];
const errors = [];
for (const r of resources) {
  const where = `${r.kind}/${r.metadata?.name}`;
  const Model = models[r.apiVersion]?.[r.kind];
  if (!Model) {
    errors.push(`${where}: no schema for ${r.apiVersion} ${r.kind}`);
    continue;
  }
  try {
    new Model(r).validate();
    checked.push(r.kind);
  } catch (e) {
    errors.push(`${where}: ${e.message}`);
  }
}
process.stdout.write(JSON.stringify({ checked, errors }));
