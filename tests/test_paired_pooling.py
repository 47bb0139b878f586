"""The paired comparison script's exact McNemar test."""

import pytest

from ppllava_hermes.recipes.bench import paired_pooling as paired


def test_mcnemar_exact_known_values():
    # scipy.stats.binomtest(8, 29, 0.5).pvalue = 0.02412; binomtest(3, 8, 0.5).pvalue = 0.72656
    assert paired.mcnemar_exact(21, 8) == pytest.approx(0.02412, abs=1e-5)
    assert paired.mcnemar_exact(3, 5) == pytest.approx(0.72656, abs=1e-5)
    assert paired.mcnemar_exact(5, 3) == paired.mcnemar_exact(3, 5)
    assert paired.mcnemar_exact(0, 0) == 1.0 and paired.mcnemar_exact(4, 4) == 1.0
