from kerbside.cli import main

main()
