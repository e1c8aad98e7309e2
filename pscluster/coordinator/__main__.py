from pscluster.coordinator.main import main

main()
