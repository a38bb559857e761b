from diffaug.report.page import main

main()
