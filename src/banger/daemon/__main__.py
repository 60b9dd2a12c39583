from banger.daemon.main import main

main()
