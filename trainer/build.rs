//! A RUNPATH to libtorch for the lf-trainer binary and tests (see libtorch_link.rs).
include!("libtorch_link.rs");

fn main() {
    link_libtorch_runtime();
}
