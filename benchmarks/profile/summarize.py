"""Summarize a `py-spy record --subprocesses --format raw` profile of ansible-playbook.

    .venv/bin/python -m benchmarks.profile.summarize benchmarks/out/<run>/fleet-0-collection.pyspy.txt [--rate 50]

Splits the sampled CPU between the controller (the ansible-playbook process and its forked
workers) and the module processes (AnsiballZ_<module>.py), and within a module process between
importing and running; names the imports and the controller functions that cost the most.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

PROCESS = re.compile(r'^process \d+:"(.*)"$')
MODULE = re.compile(r"AnsiballZ_(\w+)\.py")
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]+)(?::\d+)?\)$")


def classify(stack: list[str]) -> tuple[str, str, str]:
    """(process role, phase, detail) of one sampled stack."""
    processes = [m.group(1) for m in map(PROCESS.match, stack) if m]
    frames = [f for f in stack if not PROCESS.match(f)]
    module = next((m.group(1) for p in processes if (m := MODULE.search(p))), None)
    if module:
        if any("_find_and_load" in f for f in frames):
            # The first file the module itself imports at top level names the dependency being loaded.
            after_run = False
            for frame in frames:
                m = FRAME.match(frame)
                if not m:
                    continue
                if m.group("func") == "_run_code":
                    after_run = True
                elif after_run and m.group("func") == "<module>" and m.group("file") != f"{module}.py":
                    return f"module {module}", "import", m.group("file")
            return f"module {module}", "import", "(ansible module_utils / stdlib)"
        return f"module {module}", "run", ""
    if any("/bin/sh" in p for p in processes):
        return "shell", "", ""
    role = "controller worker" if len([p for p in processes if "ansible-playbook" in p]) > 1 else "controller main"
    detail = ""
    for frame in frames:
        m = FRAME.match(frame)
        if m:
            detail = f"{m.group('func')} ({m.group('file')})"
    return role, "", detail


def summarize(path: Path, rate: float) -> str:
    totals: Counter[tuple[str, str]] = Counter()
    imports: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack_text, _sep, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        role, phase, detail = classify(stack_text.split(";"))
        totals[(role, phase)] += count
        if phase == "import":
            imports[detail] += count
        elif role.startswith("controller"):
            leaf[f"{role}: {detail}"] += count
    all_samples = sum(totals.values()) or 1
    out = [f"{path.name}: {all_samples / rate:.1f} s of sampled CPU", "", "| where | seconds | share |",
           "| --- | --- | --- |"]
    for (role, phase), count in totals.most_common():
        out.append(f"| {role}{' (' + phase + ')' if phase else ''} | {count / rate:.1f} | {count / all_samples:.0%} |")
    module_samples = sum(c for (role, _phase), c in totals.items() if role.startswith("module"))
    import_samples = sum(c for (role, phase), c in totals.items() if phase == "import")
    out += ["", (f"module processes: {module_samples / rate:.1f} s, of which imports {import_samples / rate:.1f} s "
            f"({import_samples / max(module_samples, 1):.0%})"), "", "| imported at module start | seconds |",
            "| --- | --- |"]
    out += [f"| {name} | {count / rate:.1f} |" for name, count in imports.most_common(10)]
    out += ["", "| controller, innermost function | seconds |", "| --- | --- |"]
    out += [f"| {name} | {count / rate:.1f} |" for name, count in leaf.most_common(12)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--rate", type=float, default=50, help="the py-spy --rate the profile was taken with")
    args = parser.parse_args(argv)
    if not args.profile.is_file():
        print(f"summarize: {args.profile} does not exist; run the benchmark with --profile first.", file=sys.stderr)
        return 2
    sys.stdout.write(summarize(args.profile, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
