"""Print the EAR overrides (for bench/measure_erasure.py) chosen on the validation seed (select_erasure_settings.py's JSON).
Rule (stated before the reported run): the selection's `chosen` variant; if no variant keeps both non-target
adherences within 2 points of the original, the variant with the smallest worst non-target drop among those
with a validation concept rate <= 5%, else the lowest concept rate.

    python bench/pick_erasure_settings.py bench/results/v2/erasure_selection_red.json
    # -> --preserve 20.0 --ear-overrides '{}'   (arguments for measure_erasure.py)
"""
import json, sys
d = json.load(open(sys.argv[1]))
ch = d["chosen"]["ear"]["chosen"]
val = d["validation"]; o = val["original"]
if ch is None:
    ears = [k for k in val if k.startswith("ear-")]
    drop = lambda k: max(o["non_target_adherence_shape"] - val[k]["non_target_adherence_shape"],
                         o["non_target_adherence_colour"] - val[k]["non_target_adherence_colour"])
    ok = [k for k in ears if val[k]["rate_target"] <= 0.05]
    ch = min(ok, key=drop) if ok else min(ears, key=lambda k: val[k]["rate_target"])
    print(f"fallback: {ch}", file=sys.stderr)
cfg = dict(d["configs"][ch.removeprefix("ear-")])
preserve = cfg.pop("preserve", 4.0)
print(f"--preserve {preserve} --ear-overrides '{json.dumps(cfg)}'")
