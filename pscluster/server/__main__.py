from pscluster.server.main import main

main()
