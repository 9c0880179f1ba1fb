"""Type stubs for the thread count."""

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...

OPENMP: bool
MAX_THREADS: int
