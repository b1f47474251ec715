const { Worker, genericCommands } = require('snakepit-bridge');
new Worker({ commands: { ...genericCommands(), myCommand: (args) => args } }).run();
