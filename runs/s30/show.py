import json, sys
for f in sys.argv[1:]:
    line = open(f).read().strip().splitlines()[-1]
    d = json.loads(line); s = d["summary"]
    print(f, d.get("overrides"))
    for k, v in s.items():
        print(f"  {k:24s}", {m: [round(v[m][f'dice@{n}'], 4) for n in (0, 1, 3, 5)] + [round(v[m]['clicks'], 2)] for m in v})
