"""Doctest collection of the package: modules of an optional extra that is not installed are
skipped (their tests skip through ``pytest.importorskip``), so ``pytest`` runs without extras."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("sbi") else ["pushforward/integrations/sbi.py"]
