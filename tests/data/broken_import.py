import a_module_that_does_not_exist  # noqa: F401


def objective(trial):
    return 1.0
