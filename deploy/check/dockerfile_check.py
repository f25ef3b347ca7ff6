#!/usr/bin/env python3
"""Checks deploy/Dockerfile with BuildKit's own parser (PyPI `dockerfile`, Go bindings), for what a build would
find out late and tests/e2e/deploy.rs does not check (that test owns ENTRYPOINT, USER, EXPOSE, STOPSIGNAL and the
config COPY):

- stages: unique names; every `COPY --from` names an earlier stage; every stage but the last is used;
- the stage the binary comes from installs cmake (libz-ng-sys) and uses the workspace's rust-version;
- nothing is copied out of a `--mount=type=cache` directory (a cache mount is not part of the image);
- every COPY source from the build context exists and survives Dockerfile.dockerignore, and `COPY . .` keeps
  every workspace member, Cargo.toml and Cargo.lock (cargo build --locked needs all of them).

Run by deploy/check/run.sh. Prints one line per problem (`deploy/Dockerfile:LINE: ...`), exits 1 if any.
"""
import os
import re
import shlex
import sys
import tomllib

import dockerfile

ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DOCKERFILE = os.path.join(ROOT, "deploy", "Dockerfile")
IGNORE = DOCKERFILE + ".dockerignore"

problems = []


def problem(line, msg):
    problems.append(f"deploy/Dockerfile:{line}: {msg}")


def flag(cmd, name):
    """The value of `--name=value` among an instruction's flags, or None."""
    for f in cmd.flags:
        if f.startswith(f"--{name}="):
            return f.split("=", 1)[1]
    return None


def ignore_rules():
    """Dockerfile.dockerignore as (exclude?, regex) in file order; the last match wins, as in BuildKit."""
    rules = []
    for raw in open(IGNORE, encoding="utf-8").read().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        exclude = not pat.startswith("!")
        pat = pat.lstrip("!").strip().strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx += "(?:.*/)?"
                i += 3
            elif pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        rules.append((exclude, re.compile(rx + r"\Z")))
    return rules


def excluded(rel, rules):
    """Whether `rel` (relative to the build context) is kept out of the context, itself or via a parent dir."""
    parts = rel.strip("/").split("/")
    for n in range(1, len(parts) + 1):
        prefix = "/".join(parts[:n])
        verdict = None
        for exclude, rx in rules:
            if rx.match(prefix):
                verdict = exclude
        if verdict:
            return True
    return False


def main():
    try:
        cmds = dockerfile.parse_file(DOCKERFILE)
    except dockerfile.GoParseError as e:
        print(f"deploy/Dockerfile: BuildKit cannot parse it: {e}")
        return 1
    workspace = tomllib.load(open(os.path.join(ROOT, "Cargo.toml"), "rb"))["workspace"]
    rules = ignore_rules()

    # Split into stages: [(name, FROM command, [commands])].
    args = {}
    stages = []
    for c in cmds:
        if c.cmd == "FROM":
            v = c.value
            name = v[2] if len(v) == 3 and v[1].upper() == "AS" else None
            stages.append((name, c, []))
        elif not stages:
            if c.cmd == "ARG" and "=" in c.value[0]:
                k, val = c.value[0].split("=", 1)
                args[k] = val
        else:
            stages[-1][2].append(c)
    if len(stages) < 2:
        problem(1, "expected a build stage and a runtime stage")
        return report()

    names = [s[0] for s in stages if s[0]]
    for n in set(names):
        if names.count(n) > 1:
            problem(1, f"stage name {n} used twice")

    used = set()
    for i, (_, frm, body) in enumerate(stages):
        base = frm.value[0]
        for j in range(i):
            if base == stages[j][0]:
                used.add(j)
        for c in body:
            src = flag(c, "from") if c.cmd in ("COPY", "ADD") else None
            if src is None:
                continue
            earlier = [j for j in range(i) if stages[j][0] == src or str(j) == src]
            if not earlier:
                problem(c.start_line, f"COPY --from={src} names no earlier stage (an image would be pulled instead)")
                continue
            j = earlier[-1]
            used.add(j)
            # A cache mount's content is not in the stage's filesystem: copying out of it copies nothing.
            for run in (r for r in stages[j][2] if r.cmd == "RUN"):
                for f in run.flags:
                    m = re.match(r"--mount=(.*)", f)
                    if not m:
                        continue
                    opts = dict(kv.split("=", 1) for kv in m.group(1).split(",") if "=" in kv)
                    if opts.get("type") != "cache":
                        continue
                    target = os.path.normpath(os.path.join(workdir(stages[j][2], run), opts.get("target", "")))
                    for s in c.value[:-1]:
                        p = os.path.normpath(os.path.join(workdir(stages[j][2], None), s))
                        if p == target or p.startswith(target + "/"):
                            problem(c.start_line, f"{s} lies in the cache mount {target} of line {run.start_line}")
    for j, (name, frm, _) in enumerate(stages[:-1]):
        if j not in used:
            problem(frm.start_line, f"stage {name or j} is never used")

    # The stage that builds the binary the runtime copies.
    runtime = stages[-1]
    build_ix = {j for j in used if j != len(stages) - 1}
    for j in sorted(build_ix):
        name, frm, body = stages[j]
        runs = [c for c in body if c.cmd == "RUN"]
        if not any(installs(r, "cmake") for r in runs) and any("cargo build" in " ".join(r.value) for r in runs):
            problem(frm.start_line, f"stage {name} runs cargo build but does not apt-get install cmake (libz-ng-sys)")
        m = re.search(r"\$\{?(\w+)\}?", frm.value[0])
        image = frm.value[0]
        if m and m.group(1) in args:
            image = image.replace(m.group(0), args[m.group(1)])
        if image.startswith("rust:"):
            tag = image.split(":", 1)[1].split("-")[0]
            want = workspace["package"]["rust-version"]
            if tag != want:
                problem(frm.start_line, f"builds with rust {tag}, the workspace's rust-version is {want}")

    # Sources from the build context.
    members = workspace["members"]
    for _, _, body in stages:
        for c in body:
            if c.cmd not in ("COPY", "ADD") or flag(c, "from") is not None:
                continue
            for s in c.value[:-1]:
                rel = os.path.normpath(s).lstrip("/")
                if rel in (".", ""):
                    for need in ["Cargo.toml", "Cargo.lock", *members]:
                        if not os.path.exists(os.path.join(ROOT, need)):
                            problem(c.start_line, f"COPY . : {need} is missing from the repository")
                        elif excluded(need, rules):
                            problem(c.start_line, f"COPY . : Dockerfile.dockerignore drops {need}, which cargo needs")
                    continue
                if not os.path.exists(os.path.join(ROOT, rel)):
                    problem(c.start_line, f"COPY source {s} does not exist in the repository (build context: root)")
                elif excluded(rel, rules):
                    problem(c.start_line, f"COPY source {s} is dropped by Dockerfile.dockerignore")
    if runtime[0] is None and not runtime[2]:
        problem(runtime[1].start_line, "the runtime stage is empty")
    return report()


def workdir(body, before):
    """The WORKDIR in force at command `before` (or at the end of the stage)."""
    wd = "/"
    for c in body:
        if c is before:
            break
        if c.cmd == "WORKDIR":
            wd = os.path.join(wd, c.value[0])
    return wd


def installs(run, package):
    """Whether a RUN's shell command apt-get installs `package`."""
    text = " ".join(run.value)
    for part in re.split(r"&&|;|\|\|", text):
        try:
            words = shlex.split(part)
        except ValueError:
            words = part.split()
        if "apt-get" in words and "install" in words and package in words:
            return True
    return False


def report():
    for p in problems:
        print(p)
    if not problems:
        print("deploy/Dockerfile: ok (BuildKit parser: stages, COPY sources, cache mounts, cmake, rust-version)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
