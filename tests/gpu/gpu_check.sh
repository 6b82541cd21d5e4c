#!/usr/bin/env bash
# The GPU checks of issue 19 in one pass, on a bare CUDA machine (the image's own Python, torch,
# triton and transformers; no network, nothing installed from it). Run from the repository root:
#
#   bash tests/gpu/gpu_check.sh [STAGE,STAGE,...]      # results and logs under $OUT
#
# Wheels the image lacks (gguf, llguidance) come from .whl/ and the bundled model's tokenizer from
# .gpu_assets/tokenizer (both prepared on a CPU machine; see docs/gpu.md). Every stage runs under
# its own time limit, so a failing stage costs its limit at most and the others still report.
set -u
ROOT=$(pwd)
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
STAGES=${1:-env,probe,bench_kernels,throughput,kernels,workload,parity}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
export PAGEDLLM_TEST_TOKENIZER=${PAGEDLLM_TEST_TOKENIZER:-$ROOT/.gpu_assets/tokenizer}
MODELS=${MODELS:-/tmp/gpu_models}

# The project importable as `pagedllm` without installing it: a copy laid out as its wheel is
# (core/ -> pagedllm, plugins/ and integrations/ inside it, core/kernels followed to kernels/).
SITE=/tmp/gpu_site
rm -rf "$SITE" && mkdir -p "$SITE"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 1
fi
cp -rL core "$SITE/pagedllm" && cp -r plugins "$SITE/pagedllm/plugins" && cp -r integrations "$SITE/pagedllm/integrations"
export PYTHONPATH=$SITE

stage() {  # stage NAME LIMIT_SECONDS COMMAND...: log to $OUT/NAME.log, one line to $OUT/stages.txt
  local name=$1 limit=$2; shift 2
  case ",$STAGES," in *",$name,"*) ;; *) return 0 ;; esac
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$OUT/stages.txt"
  tail -n 4 "$OUT/$name.log" | cut -c1-300
}

pytest_stage() {  # pytest_stage NAME LIMIT PATHS...: junit XML for the table
  local name=$1 limit=$2; shift 2
  stage "$name" "$limit" $PY -P -m pytest -q -p no:cacheprovider -m "not slow" --timeout=120 --continue-on-collection-errors \
    --junitxml="$OUT/$name.xml" "$@"
}

stage env 60 bash -c "nvidia-smi; $PY -c 'import sys, torch, triton, transformers; print(sys.version); \
print(\"torch\", torch.__version__, \"triton\", triton.__version__, \"transformers\", transformers.__version__); \
print(torch.cuda.get_device_name())'"

if [ ! -d "$MODELS/big" ] && [[ ",$STAGES," =~ ,(probe|throughput|workload), ]]; then
  timeout 120 $PY -P tests/gpu/make_random_llama.py "$MODELS/big" "$PAGEDLLM_TEST_TOKENIZER" --device cuda >"$OUT/models.log" 2>&1
  timeout 60 $PY -P -c "import sys; sys.path.insert(0, 'tests'); from model_fixtures import make_tiny_model; \
make_tiny_model('$MODELS/tiny')" >>"$OUT/models.log" 2>&1
  tail -n 2 "$OUT/models.log"
fi

stage probe 150 $PY -P tests/gpu/gpu_probe.py "$MODELS/tiny" "$MODELS/big" "$OUT/probe.json"
stage bench_kernels 60 $PY -P -m pagedllm.kernels.bench_kernels
stage throughput 150 $PY -P -m pagedllm.entrypoints.cli bench throughput --backend both --model "$MODELS/big" \
  --dtype bfloat16 --num-prompts "${NUM_PROMPTS:-200}" --output-json "$OUT/throughput.json"
pytest_stage kernels 150 ${KERNEL_TESTS:-tests/kernels}
stage workload 90 $PY -P -m pagedllm.entrypoints.cli bench throughput --backend pagedllm --model "$MODELS/big" \
  --dtype bfloat16 --num-prompts 1000 --output-json "$OUT/workload.json"
pytest_stage parity 150 tests/engine tests/models tests/sampling tests/attention

$PY -P tests/gpu/gpu_table.py "$OUT"
