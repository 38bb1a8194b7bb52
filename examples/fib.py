def fibonacci(n):

