from nezha_bootstrap.console import start

if __name__ == "__main__":
    start()
