#!/usr/bin/env python3
"""Checks deploy/flake.nix with Nix's own parser (Debian's nix-bin: `nix-instantiate`), without nixpkgs (which
cannot be fetched here, so nothing is built or fully evaluated):

- `nix-instantiate --parse`: syntax, and variables used outside any `with` that are bound nowhere;
- the `outputs` function takes `self` plus exactly the declared `inputs` (a flake whose outputs name a missing input
  fails to evaluate);
- every path literal exists and is tracked by git (a flake sees tracked files only), and the binary's source
  fileset holds every workspace member plus Cargo.toml and Cargo.lock (cargo refuses a workspace with a missing
  member).

Run by deploy/check/run.sh. Prints one line per problem, exits 1 if any.
"""
import json
import os
import re
import subprocess
import sys
import tomllib

ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FLAKE = os.path.join(ROOT, "deploy", "flake.nix")

problems = []


def nix(*args):
    out = subprocess.run(["nix-instantiate", *args], capture_output=True, text=True)
    if out.returncode != 0:
        err = "\n".join(l for l in out.stderr.splitlines() if "build-users-group" not in l)
        problems.append(f"deploy/flake.nix: nix-instantiate {args[0]}: {err.strip()}")
        return None
    return out.stdout


def main():
    parsed = nix("--parse", FLAKE)
    if parsed is None:
        return report()

    expr = (
        f"let f = import {FLAKE}; in {{ inputs = builtins.attrNames (f.inputs or {{}}); "
        "args = builtins.functionArgs f.outputs; }"
    )
    shape = nix("--eval", "--strict", "--json", "-E", expr)
    if shape is not None:
        shape = json.loads(shape)
        inputs = set(shape["inputs"])
        args = set(shape["args"])
        for a in sorted(args - inputs - {"self"}):
            problems.append(f"deploy/flake.nix: outputs takes {a}, which is not in inputs")
        for i in sorted(inputs - args):
            problems.append(f"deploy/flake.nix: input {i} is not an argument of outputs")
        if "self" not in args:
            problems.append("deploy/flake.nix: outputs does not take self")

    # The parser prints path literals resolved to absolute paths.
    tracked = set(
        subprocess.run(["git", "-C", ROOT, "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    )
    paths = sorted(set(re.findall(re.escape(ROOT) + r"(?:/[A-Za-z0-9._+-]+)*", parsed)))
    for p in paths:
        rel = os.path.relpath(p, ROOT)
        if not os.path.exists(p):
            problems.append(f"deploy/flake.nix: path {rel} does not exist")
        elif rel != "." and rel not in tracked and not any(t.startswith(rel + "/") for t in tracked):
            problems.append(f"deploy/flake.nix: path {rel} is not tracked by git, so the flake cannot see it")
    members = tomllib.load(open(os.path.join(ROOT, "Cargo.toml"), "rb"))["workspace"]["members"]
    used = {os.path.relpath(p, ROOT) for p in paths}
    for need in ["Cargo.toml", "Cargo.lock", *members]:
        if need not in used:
            problems.append(f"deploy/flake.nix: the source fileset lacks {need} (cargo needs every workspace member)")
    return report(len(paths))


def report(n_paths=0):
    for p in problems:
        print(p)
    if not problems:
        print(f"deploy/flake.nix: ok (nix-instantiate: parse, inputs/outputs, {n_paths} paths tracked)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
