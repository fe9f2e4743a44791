// pkg/ as a package: package.json names files that the build produced, its version is the
// crate's, and the types cover what guard.js exports.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { test } from "node:test";

const root = new URL("../../", import.meta.url);
const pkg = JSON.parse(readFileSync(new URL("pkg/package.json", root), "utf8"));

test("package.json matches the crate and the build", () => {
  const cargo = readFileSync(new URL("Cargo.toml", root), "utf8");
  assert.equal(pkg.version, cargo.match(/^version = "(.+)"$/m)[1]);
  for (const f of pkg.files) assert.ok(existsSync(new URL(`pkg/${f}`, root)), `pkg/${f} is missing`);
  for (const target of Object.values(pkg.exports).flatMap((e) => Object.values(e))) {
    assert.ok(pkg.files.includes(target.replace(/^\.\//, "")), `export ${target} is not in files`);
  }
  assert.equal(pkg.module, "guard.js");
  assert.equal(pkg.types, "guard.d.ts");
});

test("guard.d.ts declares the API guard.js implements", () => {
  const js = readFileSync(new URL("pkg/guard.js", root), "utf8");
  const dts = readFileSync(new URL("pkg/guard.d.ts", root), "utf8");
  for (const member of ["create", "clearCache", "classify", "chat", "setRule", "tuneFilter", "tuneChat", "exportAdapters",
    "importAdapters", "resetAdapters", "dispose"]) {
    assert.match(js, new RegExp(`\\b${member}\\(`), `guard.js has ${member}`);
    assert.match(dts, new RegExp(`\\b${member}\\(`), `guard.d.ts declares ${member}`);
  }
  for (const getter of ["backend", "labels", "hasChat", "chatProbe", "policy"]) {
    assert.match(js, new RegExp(`get ${getter}\\(`));
    assert.match(dts, new RegExp(`readonly ${getter}:`));
  }
});
