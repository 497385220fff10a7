from cos3d.cli import main

main()
