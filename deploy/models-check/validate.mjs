// Validates every document of the rendered manifests given on the command line with
// kubernetes-models (each kind's own model, which checks enum values such as imagePullPolicy,
// protocol or podManagementPolicy). Exits 1 with one line per problem.
import { readFileSync } from "node:fs";
import yaml from "js-yaml";

const problems = [];
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (!doc) continue;
    const [group, version] = doc.apiVersion.includes("/") ? doc.apiVersion.split("/") : ["", doc.apiVersion];
    const path = group ? `kubernetes-models/${group}/${version}/${doc.kind}` : `kubernetes-models/${version}/${doc.kind}`;
    let Model;
    try {
      Model = (await import(path))[doc.kind];
    } catch (e) {
      problems.push(`${file}: ${doc.kind} ${doc.metadata?.name}: no model for ${doc.apiVersion}`);
      continue;
    }
    try {
      new Model(doc).validate();
    } catch (e) {
      problems.push(`${file}: ${doc.kind} ${doc.metadata?.name}: ${e.message}`);
    }
  }
}
for (const p of problems) console.log(`problem: ${p}`);
process.exit(problems.length ? 1 : 0);
