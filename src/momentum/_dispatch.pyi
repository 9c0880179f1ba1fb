"""Type stubs for the kernel-build (ISA) choice."""

def available_isas() -> list[str]: ...
def get_isa() -> str: ...
def set_isa(name: str) -> None: ...

# The builds: name -> (module, x86-64 level it needs); those this install has.
ISAS: dict[str, tuple[str, int]]
BUILT_ISAS: tuple[str, ...]
# The running kernel table (momentum.h), for PyCapsule_Import.
KERNELS: object
