from diffaug.train.stage import main

if __name__ == "__main__":
    main()
