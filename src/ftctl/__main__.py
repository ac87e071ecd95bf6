from ftctl.cli import main

main()
