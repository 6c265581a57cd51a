// What an editor makes of our files, with the libraries yaml-language-server uses.
//
//   node editor.mjs compile SCHEMA...        {"SCHEMA": null | "why ajv refuses it"}
//   node editor.mjs read FILE                the YAML document, every scalar as [kind, text]
//   node editor.mjs validate SCHEMA SPEC...  {"SPEC": ["/path: message", ...]}
//
// Schemas compile under strict Ajv2020 (draft 2020-12) with the standard formats; YAML is read
// by the yaml package in its default mode, YAML 1.2 with the core schema. Scalars are tagged
// because JSON has no Infinity or NaN: [kind, String(value)], kind one of null, boolean,
// number, string.
import { readFileSync } from "node:fs";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { parse } from "yaml";

function ajv() {
  const strict = new Ajv2020({ strict: true, allErrors: true });
  addFormats(strict);
  return strict;
}

function tagged(value) {
  if (Array.isArray(value)) return value.map(tagged);
  if (value === null) return ["null", "null"];
  if (typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, tagged(v)]));
  }
  return [typeof value, String(value)];
}

const readJson = (path) => JSON.parse(readFileSync(path, "utf8"));
const [command, ...paths] = process.argv.slice(2);
let out;
if (command === "compile") {
  out = Object.fromEntries(
    paths.map((path) => {
      try {
        ajv().compile(readJson(path));
        return [path, null];
      } catch (error) {
        return [path, error.message];
      }
    }),
  );
} else if (command === "read") {
  out = tagged(parse(readFileSync(paths[0], "utf8")));
} else if (command === "validate") {
  const check = ajv().compile(readJson(paths[0]));
  out = Object.fromEntries(
    paths.slice(1).map((path) => {
      const valid = check(parse(readFileSync(path, "utf8")));
      return [path, valid ? [] : check.errors.map((e) => `${e.instancePath}: ${e.message}`)];
    }),
  );
} else {
  console.error(`unknown command ${command}`);
  process.exit(2);
}
console.log(JSON.stringify(out));
