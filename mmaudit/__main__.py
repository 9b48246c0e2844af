from mmaudit.cli import main

main()
