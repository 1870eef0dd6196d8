from .original import main

main()
