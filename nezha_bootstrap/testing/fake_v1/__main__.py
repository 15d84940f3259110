"""`python -m nezha_bootstrap.testing.fake_v1`: serve a fake v1/v2 dashboard in the foreground."""

from nezha_bootstrap.testing.fake_v1.command import main

main()
