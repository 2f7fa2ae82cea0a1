"""Print measure_erasure.py's arguments for the EAR variant a validation selection chose.

Reads a `select_erasure_settings.py` record and applies its rule (`select_erasure_settings.choose`): the chosen
variant, or its fallback when no variant keeps the 2-point non-target budget.

    python bench/pick_erasure_settings.py bench/results/v2/erasure_selection_red.json
    # -> --preserve 20.0 --ear-overrides '{}'
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_erasure_settings import choose  # noqa: E402

record = json.loads(Path(sys.argv[1]).read_text())
names = [n for n in record["validation"] if n.startswith("ear-")]
choice = choose(record["validation"], names)
name = choice["chosen"] or choice["fallback"]
if choice["chosen"] is None:
    print(f"no variant keeps the budget; fallback: {name}", file=sys.stderr)
cfg = dict(record["configs"][name.removeprefix("ear-")])
preserve = cfg.pop("preserve", 4.0)
print(f"--preserve {preserve} --ear-overrides '{json.dumps(cfg)}'")
