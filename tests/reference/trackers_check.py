"""Reads what lf-trainer's trackers wrote with the trackers' own readers, and prints it as JSON.

  trackers_check.py tensorboard LOGDIR
      -> {"scalars": {tag: [[step, value], ...]}, "hparams": {name: value}} read by tbparse
         (TensorBoard's event-file reader underneath)
  trackers_check.py mlflow TRACKING_URI RUN_ID
      -> {"status", "run_name", "params", "metrics": {key: [[step, value], ...]},
          "artifacts": {path: sha256}} read by MlflowClient

The Rust tests compare this with what they sent."""

import hashlib
import json
import os
import sys
import tempfile


def tensorboard(logdir):
    from tbparse import SummaryReader

    reader = SummaryReader(logdir)
    scalars = {}
    for row in reader.scalars.itertuples():
        scalars.setdefault(row.tag, []).append([int(row.step), float(row.value)])
    hparams = {row.tag: row.value for row in reader.hparams.itertuples()}
    return {"scalars": scalars, "hparams": hparams}


def mlflow_run(uri, run_id):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    metrics = {}
    for key in run.data.metrics:
        history = client.get_metric_history(run_id, key)
        metrics[key] = sorted([m.step, m.value] for m in history)
    artifacts = {}
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, "", tmp)
        for root, _, files in os.walk(local):
            for f in files:
                path = os.path.join(root, f)
                with open(path, "rb") as fh:
                    artifacts[os.path.relpath(path, local)] = hashlib.sha256(fh.read()).hexdigest()
    return {
        "status": run.info.status,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "params": dict(run.data.params),
        "metrics": metrics,
        "artifacts": artifacts,
    }


def main():
    kind = sys.argv[1]
    if kind == "tensorboard":
        out = tensorboard(sys.argv[2])
    elif kind == "mlflow":
        out = mlflow_run(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown reader {kind}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
