//! A RUNPATH to libtorch for this crate's test executables (see ../libtorch_link.rs).
include!("../libtorch_link.rs");

fn main() {
    link_libtorch_runtime();
}
