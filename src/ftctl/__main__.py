from ftctl.cli.app import main

main()
