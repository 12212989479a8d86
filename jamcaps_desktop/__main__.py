from jamcaps_desktop.cli.main import main

main()
