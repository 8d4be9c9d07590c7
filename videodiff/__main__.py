from videodiff.cli import main

main()
