//! Small inputs for the unit tests.

use lf_api::FineTuneJob;

/// A valid FineTuneJob with only the required fields.
pub fn minimal_job() -> FineTuneJob {
    FineTuneJob::from_yaml_str(
        "apiVersion: lf-operator.io/v1alpha1\nkind: FineTuneJob\nmetadata: {name: tiny}\nspec:\n  \
         model: {name: tiny, source: {claimName: models}}\n  data: {source: {claimName: data}}\n  \
         output: {claimName: out}\n  resources: {gpuMemoryGib: 24, gpusPerNode: 1}\n",
    )
    .expect("the minimal FineTuneJob parses")
}
