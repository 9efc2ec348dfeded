"""Makes the shared helpers beside this file (`model_helpers`) importable from the test
folders below it, which mirror the package's subpackages."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
