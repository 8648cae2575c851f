"""Doctest collection of the package without its optional extras.

Modules of an extra that is not installed are skipped (their tests skip through
``pytest.importorskip``), so ``pytest`` runs without extras.
"""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("sbi") else ["pushforward/integrations/sbi.py"]
