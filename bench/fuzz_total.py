"""pytest plugin for bench/fuzz_soak.py: print how many inputs the fuzz module fed (tests/support/fuzz.py)."""


def pytest_unconfigure(config):
    import fuzz

    print("\n@@TOTAL@@%d" % fuzz.TOTAL[0])
