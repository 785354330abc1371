//! Emits PyO3's interpreter cfgs (`Py_3_N`, `Py_LIMITED_API`, ...) for this crate's own code.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
