from drgan.cli import main

main()
