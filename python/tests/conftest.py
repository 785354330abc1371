import os
import sys

# tests/playbook.py is a helper module, importable from the tests.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
