from lmlab.cli.app import main

main()
