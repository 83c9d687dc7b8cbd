"""The `ndop` command line. Loading it makes this process one of ndop's own (one BLAS thread,
see ndop_core.process_environment), before anything loads NumPy."""

from ndop_core.process_environment import use_one_blas_thread

use_one_blas_thread()
