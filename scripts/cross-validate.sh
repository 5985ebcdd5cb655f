#!/usr/bin/env bash
# Cross-validation by photograph over a DIARETDB1-layout folder (issue 9):
#   scripts/cross-validate.sh DATA CONFIG OUT [FOLDS] [FOLD...]
# DATA is a DIARETDB1-layout folder (resources/images/ddb1_fundusimages/*.png and
# ddb1_groundtruth/<lesion>/*.png; PNG only, plus ddb1_fundusmask/fmask.tif when present), e.g.
# the 12 official-training photographs. Its photographs, sorted by name, are dealt into FOLDS
# folds (default 4, at least 2; the i-th photograph, counting from 0, goes to fold i mod FOLDS + 1).
# For each fold k (1-based; all folds, or the FOLD numbers given) it writes OUT/fold<k>/data
# (copies of the other folds' photographs with their ground truth, all on the official training
# list) and OUT/fold<k>/held (the fold's photographs), then runs, with CONFIG's settings and
# `name`/`data`/`out` pointed there:
#   pipeline generate, split, train            on the other folds' photographs
#   pipeline evaluate --images held --truth held   on the fold's photographs, full resolution
# A fold folder is refused (before anything runs) when it exists and this script did not make
# it; its own fold folders are replaced whole. Finally it pools the evaluation.json of folds
# 1..FOLDS made with this FOLDS and this CONFIG (others under OUT are ignored, and folds not run
# yet are named) into OUT/cv-summary.json (also printed): Dice,
# IoU, precision and recall of the summed pixel counts over all held-out photographs, lesion
# recall and precision of the summed lesion counts, and the mean of the folds' pooled AUPR, for
# the primary ground-truth threshold and each extra one. PIPELINE (default target/release/pipeline)
# is the binary; extra `pipeline train` arguments go in TRAIN_ARGS (e.g. "--device cpu").
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,22p' "$0" >&2
  exit 2
fi
die() { echo "error: $*" >&2; exit 1; }
[ -d "$1" ] || die "$1: no such folder (DATA)"
[ -f "$2" ] || die "$2: no such file (CONFIG)"
data=$(realpath "$1")
config=$(realpath "$2")
out=$3
folds=${4:-4}
[[ "$folds" =~ ^[0-9]+$ ]] && [ "$folds" -ge 2 ] || die "FOLDS must be a whole number >= 2, got '$folds'"
shift 3
[ $# -gt 0 ] && shift
only=("$@")
for k in "${only[@]}"; do
  [[ "$k" =~ ^[0-9]+$ ]] && [ "$k" -ge 1 ] && [ "$k" -le "$folds" ] || die "fold '$k' is not within 1..$folds"
done
pipeline=${PIPELINE:-target/release/pipeline}
[ -x "$pipeline" ] || die "$pipeline: no such program (build it with cargo build --release, or set PIPELINE)"
bin=$(realpath "$pipeline")
jq -e 'type == "object"' "$config" >/dev/null 2>&1 || die "$config is not a JSON object (a pipeline config)"
stamp="folds=$folds config=$(sha256sum < "$config" | cut -d' ' -f1)"
lesion=$(jq -r '.lesion // "hemorrhages"' "$config")
imgs="$data/resources/images/ddb1_fundusimages"
truth="$data/resources/images/ddb1_groundtruth/$lesion"
[ -d "$imgs" ] || { echo "error: $imgs: no such folder (DATA must be a DIARETDB1-layout folder)" >&2; exit 1; }
[ -d "$truth" ] || { echo "error: $truth: no such folder (no ground truth for lesion '$lesion')" >&2; exit 1; }
mapfile -t stems < <(cd "$imgs" && ls -- *.png | sed 's/\.png$//' | sort)
n=${#stems[@]}
[ "$n" -ge "$folds" ] || { echo "error: $n photographs in $imgs, fewer than $folds folds" >&2; exit 1; }
mkdir -p "$out"
out=$(realpath "$out")
fmask="$data/resources/images/ddb1_fundusmask"
if [ ${#only[@]} -eq 0 ]; then
  only=($(seq 1 "$folds"))
fi
for k in "${only[@]}"; do
  f="$out/fold$k"
  if [ -e "$f" ] && [ ! -e "$f/.cross-validate" ]; then
    die "$f exists and was not made by this script; not touching it"
  fi
done

run_fold() {
  local k=$1 f="$out/fold$1"
  local d="$f/data/resources/images" h="$f/held"
  [ -e "$f" ] && rm -rf "$f"  # made by this script (checked above)
  mkdir -p "$d/ddb1_fundusimages" "$d/ddb1_groundtruth/$lesion" "$f/data/resources/traindatasets" \
    "$f/data/resources/testdatasets" "$h/images" "$h/truth"
  echo "$stamp" > "$f/.cross-validate"
  [ -d "$fmask" ] && cp -r "$fmask" "$d/"
  : > "$f/data/resources/traindatasets/trainset.txt"
  : > "$f/data/resources/testdatasets/testset.txt"
  for i in "${!stems[@]}"; do
    local s=${stems[$i]}
    if [ $((i % folds + 1)) -eq "$k" ]; then
      cp "$imgs/$s.png" "$h/images/" && cp "$truth/$s.png" "$h/truth/"
    else
      cp "$imgs/$s.png" "$d/ddb1_fundusimages/" && cp "$truth/$s.png" "$d/ddb1_groundtruth/$lesion/"
      echo "$s.png" >> "$f/data/resources/traindatasets/trainset.txt"
    fi
  done
  jq --arg n "fold$k" --arg d "$f/data" --arg o "$f/out" '.name = $n | .data = $d | .out = $o' \
    "$config" > "$f/config.json"
  echo "== fold $k: held out $(ls "$h/images" | tr '\n' ' ')"
  "$bin" generate --config "$f/config.json"
  "$bin" split --config "$f/config.json"
  # shellcheck disable=SC2086
  "$bin" train --config "$f/config.json" ${TRAIN_ARGS:-}
  # shellcheck disable=SC2086
  "$bin" evaluate --config "$f/config.json" ${TRAIN_ARGS:-} --images "$h/images" --truth "$h/truth"
}

for k in "${only[@]}"; do
  start=$SECONDS
  run_fold "$k"
  echo "== fold $k: $((SECONDS - start)) s"
done

# Pool the folds that have an evaluation.json.
python3 - "$out" "$folds" "$stamp" <<'EOF'
import json, os, sys
out, folds, stamp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
evals, missing = [], []
for k in range(1, folds + 1):
    d = os.path.join(out, f"fold{k}")
    path = os.path.join(d, "out", f"fold{k}", "eval", "evaluation.json")
    try:
        same = open(os.path.join(d, ".cross-validate")).read().strip() == stamp
    except OSError:
        same = False
    if same and os.path.isfile(path):
        evals.append(path)
    else:
        missing.append(k)
if missing:
    print(f"note: fold(s) {missing} of {folds} have no result made with this config and fold count; pooling the others", file=sys.stderr)
if not evals:
    sys.exit("no fold of this config and fold count has an evaluation.json under " + out)
def sections(e):
    yield e["gt_threshold"], e
    for x in e.get("extra_gt_thresholds", []):
        yield x["gt_threshold"], x
pooled = {}
for path in evals:
    e = json.load(open(path))
    for t, sec in sections(e):
        p = pooled.setdefault(t, {"TP": 0, "FP": 0, "FN": 0, "lesions": 0, "found": 0,
                                  "pred_components": 0, "pred_true": 0, "aupr": [], "images": 0})
        for case in sec["metric_per_case"]:
            m = case["metrics"]
            for c in ("TP", "FP", "FN"):
                p[c] += m[c]
            lw = m["lesion_wise"]
            p["lesions"] += lw["n_ref"]; p["found"] += lw["found"]
            p["pred_components"] += lw["n_pred"]; p["pred_true"] += lw["n_pred_true"]
            p["images"] += 1
        if sec["pooled"]["AUPR"] is not None:
            p["aupr"].append(sec["pooled"]["AUPR"])
def ratio(a, b):
    return None if b == 0 else round(a / b, 4)
summary = {"folds": evals, "fold_count": folds, "missing_folds": missing, "thresholds": []}
for t, p in sorted(pooled.items(), reverse=True):
    tp, fp, fn = p["TP"], p["FP"], p["FN"]
    summary["thresholds"].append({
        "gt_threshold": t, "images": p["images"],
        "Dice": ratio(2 * tp, 2 * tp + fp + fn), "IoU": ratio(tp, tp + fp + fn),
        "Precision": ratio(tp, tp + fp), "Recall": ratio(tp, tp + fn),
        "AUPR_mean_of_folds": round(sum(p["aupr"]) / len(p["aupr"]), 4) if p["aupr"] else None,
        "AUPR_per_fold": [round(a, 4) for a in p["aupr"]],
        "lesion_recall": ratio(p["found"], p["lesions"]), "lesions": p["lesions"], "found": p["found"],
        "lesion_precision": ratio(p["pred_true"], p["pred_components"]),
    })
tmp = os.path.join(out, ".cv-summary.json.tmp")
with open(tmp, "w") as f:
    json.dump(summary, f, indent=2)
os.replace(tmp, os.path.join(out, "cv-summary.json"))
print(json.dumps(summary["thresholds"], indent=2))
EOF
