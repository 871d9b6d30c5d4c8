"""Writes capability.jsonl: the project's own short multiple-choice set (see README.md).

Every item below was written by hand for this project: (question, correct answer,
three wrong answers). The choices are shuffled with a fixed seed so that the
correct answer's position carries no signal. Run: python data/eval/make_capability.py
"""

import json
import random
from pathlib import Path

ITEMS = {
    "arithmetic": [
        ("What is 7 + 8?", "15", "13", "16", "14"),
        ("What is 12 times 3?", "36", "32", "38", "34"),
        ("What is 100 minus 37?", "63", "73", "67", "53"),
        ("What is 9 times 9?", "81", "72", "99", "89"),
        ("What is 48 divided by 6?", "8", "6", "9", "7"),
        ("What is 25 + 17?", "42", "32", "43", "52"),
        ("What is 15% of 200?", "30", "15", "20", "35"),
        ("What is half of 90?", "45", "40", "35", "55"),
        ("What is 2 to the power of 5?", "32", "10", "25", "64"),
        ("What is the square root of 144?", "12", "14", "11", "16"),
        ("What is 1000 minus 1?", "999", "990", "9999", "1001"),
        ("What is 6 times 7?", "42", "36", "48", "49"),
        ("How many minutes are there in two hours?", "120", "100", "60", "200"),
        ("How many days are there in a week?", "Seven", "Five", "Six", "Eight"),
        ("If you have 3 apples and buy 4 more, how many apples do you have?", "7", "6", "8", "12"),
        ("What is 11 times 11?", "121", "111", "122", "131"),
        ("What is 3/4 written as a decimal?", "0.75", "0.34", "0.43", "0.7"),
        ("What is 81 divided by 9?", "9", "8", "7", "11"),
        ("How many sides does a hexagon have?", "Six", "Five", "Seven", "Eight"),
        ("What is 50 + 50 + 50?", "150", "100", "155", "500"),
    ],
    "science": [
        ("Which gas do plants take in from the air for photosynthesis?", "Carbon dioxide", "Oxygen", "Nitrogen",
         "Helium"),
        ("What is the chemical symbol for gold?", "Au", "Ag", "Go", "Gd"),
        ("At what temperature in degrees Celsius does water boil at sea level?", "100", "50", "90", "212"),
        ("Which planet is closest to the Sun?", "Mercury", "Venus", "Mars", "Earth"),
        ("What is the largest planet in our solar system?", "Jupiter", "Saturn", "Earth", "Neptune"),
        ("Which organ pumps blood through the human body?", "The heart", "The liver", "The lungs", "The kidneys"),
        ("What is the common name of H2O?", "Water", "Salt", "Sugar", "Vinegar"),
        ("How many legs does a spider have?", "Eight", "Six", "Ten", "Four"),
        ("Which force keeps us on the ground?", "Gravity", "Magnetism", "Friction", "Electricity"),
        ("Which part of a plant takes up water from the soil?", "The roots", "The leaves", "The flowers",
         "The seeds"),
        ("At what temperature in degrees Celsius does water freeze?", "0", "32", "10", "-10"),
        ("Which blood cells carry oxygen?", "Red blood cells", "White blood cells", "Platelets", "Nerve cells"),
        ("What do bees make?", "Honey", "Milk", "Cheese", "Butter"),
        ("Which star is closest to Earth?", "The Sun", "Sirius", "Polaris", "Betelgeuse"),
        ("What is the hardest natural substance?", "Diamond", "Gold", "Iron", "Chalk"),
        ("How many bones does an adult human have?", "206", "106", "306", "56"),
    ],
    "geography": [
        ("What is the capital of France?", "Paris", "Lyon", "Marseille", "Nice"),
        ("What is the capital of Japan?", "Tokyo", "Kyoto", "Osaka", "Seoul"),
        ("What is the capital of Italy?", "Rome", "Milan", "Venice", "Naples"),
        ("What is the capital of Canada?", "Ottawa", "Toronto", "Vancouver", "Montreal"),
        ("What is the capital of Australia?", "Canberra", "Sydney", "Melbourne", "Perth"),
        ("What is the longest river in Africa?", "The Nile", "The Congo", "The Niger", "The Zambezi"),
        ("On which continent is Brazil?", "South America", "Africa", "Europe", "Asia"),
        ("What is the largest ocean on Earth?", "The Pacific Ocean", "The Atlantic Ocean", "The Indian Ocean",
         "The Arctic Ocean"),
        ("Which country has the largest population in South America?", "Brazil", "Argentina", "Peru", "Chile"),
        ("What is the capital of Egypt?", "Cairo", "Alexandria", "Luxor", "Giza"),
        ("What is the largest hot desert in the world?", "The Sahara", "The Gobi", "The Kalahari", "The Mojave"),
        ("What is the capital of Germany?", "Berlin", "Munich", "Hamburg", "Frankfurt"),
        ("In which mountain range is Mount Everest?", "The Himalayas", "The Alps", "The Andes", "The Rockies"),
        ("What is the capital of Spain?", "Madrid", "Barcelona", "Seville", "Valencia"),
        ("Which country is shaped like a boot?", "Italy", "Spain", "Greece", "Portugal"),
    ],
    "commonsense": [
        ("What do you use to cut paper?", "Scissors", "A spoon", "A pillow", "A towel"),
        ("Where do you usually keep milk cold at home?", "In the refrigerator", "In the oven", "In the closet",
         "On the roof"),
        ("What do people usually wear on their feet?", "Shoes", "Gloves", "Hats", "Scarves"),
        ("What happens to ice when it is left in the sun?", "It melts", "It grows", "It gets colder",
         "It turns into wood"),
        ("What do you need to open a locked door?", "A key", "A fork", "A candle", "A pencil"),
        ("When is it usually dark outside?", "At night", "At noon", "In the morning", "In the afternoon"),
        ("What should you do when you are thirsty?", "Drink water", "Eat crackers", "Run faster", "Stay awake"),
        ("Which animal is known for barking?", "A dog", "A cat", "A cow", "A fish"),
        ("What is an umbrella for?", "Staying dry in the rain", "Cooking food", "Writing letters", "Digging holes"),
        ("Which season comes after winter?", "Spring", "Summer", "Autumn", "Fall"),
        ("What is a baby cat called?", "A kitten", "A puppy", "A calf", "A foal"),
        ("What colour is the sky on a clear day?", "Blue", "Green", "Red", "Brown"),
        ("If a glass falls on a hard floor, what is likely to happen?", "It breaks", "It bounces back up",
         "It melts", "It grows"),
        ("Where do fish live?", "In water", "In trees", "In the desert", "In the clouds"),
        ("What do you usually do with a book?", "Read it", "Eat it", "Wear it", "Plant it"),
    ],
    "language": [
        ("What is the opposite of \"hot\"?", "Cold", "Warm", "Big", "Fast"),
        ("What is the plural of \"mouse\"?", "Mice", "Mouses", "Meese", "Mousen"),
        ("What is the past tense of \"go\"?", "Went", "Goed", "Goes", "Going"),
        ("Which word means the same as \"happy\"?", "Glad", "Sad", "Angry", "Tired"),
        ("What is the opposite of \"up\"?", "Down", "Over", "Left", "Top"),
        ("How many letters are there in the English alphabet?", "26", "24", "28", "30"),
        ("Which of these is a fruit?", "An apple", "A carrot", "A potato", "An onion"),
        ("Which of these is a mammal?", "A whale", "A shark", "A trout", "A lizard"),
        ("What is the first letter of the English alphabet?", "A", "B", "Z", "E"),
    ],
    "history": [
        ("Who wrote \"Romeo and Juliet\"?", "William Shakespeare", "Charles Dickens", "Jane Austen", "Mark Twain"),
        ("In which year did World War II end?", "1945", "1918", "1939", "1965"),
        ("Who painted the Mona Lisa?", "Leonardo da Vinci", "Pablo Picasso", "Vincent van Gogh", "Claude Monet"),
        ("Which language is mainly spoken in Brazil?", "Portuguese", "Spanish", "French", "Italian"),
        ("How many continents are there?", "Seven", "Five", "Six", "Nine"),
    ],
}


def main(path=Path(__file__).with_name("capability.jsonl"), seed=0) -> None:
    rng = random.Random(seed)
    lines = []
    for category, items in ITEMS.items():
        for k, (question, correct, *wrong) in enumerate(items, 1):
            choices = [correct, *wrong]
            rng.shuffle(choices)
            lines.append(json.dumps({"id": f"cap-{category}-{k:03d}", "category": category, "question": question,
                                     "choices": choices, "answer": choices.index(correct)}))
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
