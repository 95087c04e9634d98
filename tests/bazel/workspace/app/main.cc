#include <iostream>
#include "app/greet.h"
int main() { std::cout << greet("kiln") << std::endl; return 0; }
