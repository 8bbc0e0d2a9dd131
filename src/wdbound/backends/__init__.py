"""Other tools' estimators behind wdbound's result types, for cross-checks (``--backend``)."""
