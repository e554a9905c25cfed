// The Python module object of silverrec._C. Importing it runs the static TORCH_LIBRARY_IMPL
// registrations of every other translation unit in this extension; it defines no functions.
// Deliberately includes no torch header, so it compiles in a second.
#include <Python.h>

static struct PyModuleDef silverrec_c_module = {
    PyModuleDef_HEAD_INIT, "_C", "C++ CPU kernels of torch.ops.silverrec", -1, nullptr,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&silverrec_c_module); }
