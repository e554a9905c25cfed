// The Python module object of silverrec._C. Importing it runs the static TORCH_LIBRARY_IMPL
// registrations of every other translation unit in this extension. It defines one function,
// cpu_isa(), the CPU code path the kernels take (cpu_isa.h), and refuses a bad SILVERREC_CPU_ISA.
// Deliberately includes no torch header, so it compiles in a second.
#include <Python.h>

#include <cstring>

#include "cpu_isa.h"

static PyObject* cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(silverrec::isa_name(silverrec::active_isa())); }

static PyMethodDef silverrec_c_methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS,
     "cpu_isa() -> str: the CPU code path of the kernels, 'avx512_vnni' or 'avx2' (SILVERREC_CPU_ISA forces one)."},
    {nullptr, nullptr, 0, nullptr},
};

static struct PyModuleDef silverrec_c_module = {
    PyModuleDef_HEAD_INIT, "_C", "C++ CPU kernels of torch.ops.silverrec", -1, silverrec_c_methods,
};

PyMODINIT_FUNC PyInit__C(void) {
  const char* forced = std::getenv("SILVERREC_CPU_ISA");
  if (forced != nullptr && forced[0] != '\0') {
    if (std::strcmp(forced, "avx2") != 0 && std::strcmp(forced, "avx512_vnni") != 0) {
      PyErr_Format(PyExc_ImportError, "SILVERREC_CPU_ISA must be 'avx2' or 'avx512_vnni' (or unset), got '%s'", forced);
      return nullptr;
    }
    if (std::strcmp(forced, "avx512_vnni") == 0 && !silverrec::cpu_has_avx512_vnni()) {
      PyErr_SetString(PyExc_ImportError,
                      "SILVERREC_CPU_ISA=avx512_vnni, but this CPU lacks AVX-512 F/BW/VL/VNNI: unset it or use avx2");
      return nullptr;
    }
  }
  return PyModule_Create(&silverrec_c_module);
}
