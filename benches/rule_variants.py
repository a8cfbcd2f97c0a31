#!/usr/bin/env python3
"""Writes N threshold variants of every shipped rule (queries/**/*.sql) into OUT: the rule
book of a city whose districts each tune their own thresholds. Variant k of N scales every
threshold of the SQL outside quotes (not INTERVAL '5 minutes', not round(x, 1)) by
1 + 0.1 k/N (1 + k/100 for N = 10), so the variants share table, window and GROUP BY and
differ only in their thresholds (a number right after a comparison operator: `>= 25`,
`< 0.7 * max(…)`). Every rule book spans the same 10 %: a larger book has more rules, not
wilder ones (at +49 % a pressure-collapse variant fires for every meter). Variant 0 is the
shipped rule itself.

    python3 benches/rule_variants.py 10 /tmp/rules-200      # 20 rules -> 200
    python3 benches/rule_variants.py 50 /tmp/rules-1000     # 20 rules -> 1000
"""
import pathlib
import re
import sys

THRESHOLD = re.compile(r"(<>|[<>]=?|=)(\s*)(\d+(?:\.\d+)?)(?![\w.])")


def scale_sql(line: str, factor: float) -> str:
    # Numbers inside single quotes (INTERVAL '5 minutes', 'gas_lel') stay as they are.
    parts = line.split("'")
    for i in range(0, len(parts), 2):
        parts[i] = THRESHOLD.sub(lambda m: f"{m.group(1)}{m.group(2)}{float(m.group(3)) * factor:g}", parts[i])
    return "'".join(parts)


def main() -> None:
    copies, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
    queries = pathlib.Path(__file__).resolve().parent.parent / "queries"
    for path in sorted(queries.rglob("*.sql")):
        text = path.read_text()
        for k in range(copies):
            factor = 1 + 0.1 * k / copies
            lines = [line if line.lstrip().startswith("--") else scale_sql(line, factor) for line in text.splitlines()]
            target = out / path.parent.relative_to(queries) / f"{path.stem}_v{k}.sql"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(lines) + "\n")
    print(f"wrote {copies} variants of each rule under {out}")


if __name__ == "__main__":
    main()
